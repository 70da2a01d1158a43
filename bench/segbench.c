/* Scratch measurement for bench/README.md (seventeenth round): CPU a record of appending
 * 2,000,000 records of 200 bytes to seg.dat in the current directory.
 * Usage: segbench write|rewrite|mmap|mmappop SYNC (SYNC 1: fdatasync or msync every 1,024). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#define REC 200
#define N 2000000L
#define GROUP 1024
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_utime.tv_usec/1e6+r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
static double sys_(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  const char*mode=argv[1]; int dosync=atoi(argv[2]);
  char rec[REC]; memset(rec,'x',REC);
  int fd; double c0=cpu(),s0=sys_(),t0=now();
  size_t total=N*REC;
  if(!strcmp(mode,"write")||!strcmp(mode,"rewrite")){
    fd=open("seg.dat",O_WRONLY|O_CREAT|(strcmp(mode,"rewrite")?O_TRUNC:0),0644);
    char*buf=malloc(GROUP*REC);
    for(long i=0;i<N;i+=GROUP){
      for(int j=0;j<GROUP;j++){rec[0]=(char)(i+j);memcpy(buf+j*REC,rec,REC);}
      if(write(fd,buf,GROUP*REC)!=GROUP*REC){perror("w");return 1;}
      if(dosync)fdatasync(fd);
    }
  } else {
    fd=open("seg.dat",O_RDWR|O_CREAT|O_TRUNC,0644);
    if(ftruncate(fd,total)){perror("t");return 1;}
    int flags=MAP_SHARED; if(!strcmp(mode,"mmappop"))flags|=MAP_POPULATE;
    char*m=mmap(0,total,PROT_READ|PROT_WRITE,flags,fd,0);
    if(m==MAP_FAILED){perror("m");return 1;}
    double cp=cpu(); printf("populate cpu %.3f\n",cp-c0);
    size_t synced=0;
    for(long i=0;i<N;i+=GROUP){
      for(int j=0;j<GROUP && i+j<N;j++){rec[0]=(char)(i+j);memcpy(m+(i+j)*REC,rec,REC);}
      if(dosync){size_t end=(i+GROUP<N?i+GROUP:N)*REC; size_t a=synced&~4095UL; msync(m+a,end-a,MS_SYNC); synced=end;}
    }
  }
  double c1=cpu(),s1=sys_(),t1=now();
  printf("%s sync=%d: cpu %.3f s (sys %.3f) wall %.3f -> %.3f us/rec cpu\n",mode,dosync,c1-c0,s1-s0,t1-t0,(c1-c0)/N*1e6);
  return 0;
}
